"""Environment variables that carry the run's settings from the launcher to every process."""

TRACE_DIR = "CONVCHECK_TRACE_DIR"
SCRATCH_DIR = "CONVCHECK_SCRATCH_DIR"
STEPS = "CONVCHECK_STEPS"
MAX_BATCHES = "CONVCHECK_MAX_BATCHES_PER_EPOCH"
#: Without MAX_BATCHES: a training loop's epoch ends after this many optimizer steps (see runtime/epochcap.py).
EPOCH_STEPS = "CONVCHECK_AUTO_EPOCH_STEPS"
#: auto | cpu | cuda: whether CUDA usage is mapped onto the CPU.
DEVICE = "CONVCHECK_DEVICE"
#: "1": torch.cuda.is_available() answers True (and device_count() the local world size).
PRETEND_CUDA = "CONVCHECK_PRETEND_CUDA"
#: How many GPUs torch.cuda.device_count() reports under PRETEND_CUDA.
PRETEND_DEVICES = "CONVCHECK_PRETEND_DEVICES"
#: "1": every DataLoader yields its first batch again and again (the overfit-one-batch run of CC012).
REPEAT_FIRST_BATCH = "CONVCHECK_REPEAT_FIRST_BATCH"
#: Set when convcheck itself started the workers (--nproc-per-node): their number.
NPROC_PER_NODE = "CONVCHECK_NPROC_PER_NODE"
#: Comma-separated names of the recorders to install (absent: every available one).
RECORDERS = "CONVCHECK_RECORDERS"
#: Set in the environment of a run's fork server (runtime/forkserver.py): torch is imported there without the probe.
FORKSERVER = "CONVCHECK_FORKSERVER"
