"""Environment variables that carry the run's settings from the launcher to every process."""

TRACE_DIR = "CONVCHECK_TRACE_DIR"
SCRATCH_DIR = "CONVCHECK_SCRATCH_DIR"
STEPS = "CONVCHECK_STEPS"
MAX_BATCHES = "CONVCHECK_MAX_BATCHES_PER_EPOCH"
#: The PYTHONPATH the user had before convcheck put its site folder first.
ORIGINAL_PYTHONPATH = "CONVCHECK_ORIGINAL_PYTHONPATH"
