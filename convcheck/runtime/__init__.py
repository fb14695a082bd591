"""Running a user's script under instrumentation: launcher (parent), probe (workers), traces."""
