"""The built-in checks, in code order."""

from __future__ import annotations

from convcheck.checks.cc001_state_dict_prefix import StateDictPrefix
from convcheck.checks.cc002_unseeded_rng import UnseededRng
from convcheck.checks.cc003_loss_double_normalization import LossDoubleNormalization
from convcheck.checks.cc004_sampler_epoch_not_set import SamplerEpochNotSet
from convcheck.checks.cc005_lr_not_scaled import LrNotScaled
from convcheck.checks.cc006_frozen_parameters import FrozenParameters
from convcheck.checks.cc007_fp16_overflow import Fp16Overflow
from convcheck.checks.cc008_grads_not_zeroed import GradsNotZeroed
from convcheck.checks.cc009_eval_mode_training import EvalModeTraining
from convcheck.checks.cc010_softmax_before_cross_entropy import SoftmaxBeforeCrossEntropy
from convcheck.checks.cc011_scheduler_before_optimizer import SchedulerBeforeOptimizer
from convcheck.checks.cc012_loss_not_decreasing import LossNotDecreasing
from convcheck.checks.cc013_ddp_replicas_diverge import DdpReplicasDiverge
from convcheck.checks.cc014_batchnorm_tiny_batch import BatchnormTinyBatch
from convcheck.checks.cc015_loss_diverging import LossDiverging
from convcheck.checks.cc016_unregistered_submodule import UnregisteredSubmodule
from convcheck.checks.cc017_training_data_not_shuffled import TrainingDataNotShuffled
from convcheck.checks.cc018_ranks_different_data import RanksDifferentData
from convcheck.checks.cc019_mask_masks_nothing import MaskMasksNothing
from convcheck.checks.cc020_input_not_normalized import InputNotNormalized
from convcheck.checks.cc021_save_on_every_rank import SaveOnEveryRank
from convcheck.checks.cc022_checkpointing_without_input_grad import CheckpointingWithoutInputGrad
from convcheck.checks.cc023_accumulation_syncs_every_micro_step import AccumulationSyncsEveryMicroStep
from convcheck.checks.cc024_vanishing_or_exploding_gradients import VanishingOrExplodingGradients
from convcheck.checks.cc025_fp16_where_bf16_fits import Fp16WhereBf16Fits
from convcheck.checks.cc100_unused_suppression import UnusedSuppression

ALL: list = [
    StateDictPrefix,
    UnseededRng,
    LossDoubleNormalization,
    SamplerEpochNotSet,
    LrNotScaled,
    FrozenParameters,
    Fp16Overflow,
    GradsNotZeroed,
    EvalModeTraining,
    SoftmaxBeforeCrossEntropy,
    SchedulerBeforeOptimizer,
    LossNotDecreasing,
    DdpReplicasDiverge,
    BatchnormTinyBatch,
    LossDiverging,
    UnregisteredSubmodule,
    TrainingDataNotShuffled,
    RanksDifferentData,
    MaskMasksNothing,
    InputNotNormalized,
    SaveOnEveryRank,
    CheckpointingWithoutInputGrad,
    AccumulationSyncsEveryMicroStep,
    VanishingOrExplodingGradients,
    Fp16WhereBf16Fits,
    UnusedSuppression,
]
