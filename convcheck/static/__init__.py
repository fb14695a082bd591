"""The static pass: one parse of the script; checks read facts from it."""
