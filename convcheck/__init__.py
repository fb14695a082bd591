"""convcheck: why won't my model converge?"""

__version__ = "0.1.0"
