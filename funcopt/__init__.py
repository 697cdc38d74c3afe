"""funcopt: Hugging Face transformers' optimization module as pure, exact JAX transformations.

Every optimizer is an ``optax.GradientTransformation``; every schedule a jit-able
``step -> learning rate`` function; numbers match transformers 4.49.0 to float32 round-off.
The bridges (``funcopt.torch``, ``funcopt.tensorflow``) are imported explicitly, so
``import funcopt`` needs neither torch nor TensorFlow.

Structure: ``funcopt._core`` runs every optimizer (the per-leaf loop, the state and its
dtypes, the params check, masks); each optimizer is one private module holding a frozen rule
of validated hyperparameters and pure leaf functions (``_adamw``, ``_adafactor``,
``_adam_weight_decay``, ...); schedules and helpers have a module each; the torch and TF
bridges run those same rules (``funcopt/torch/_registry.py`` maps each optimizer's state to
torch's).

>>> import funcopt
>>> optimizer = funcopt.adamw(funcopt.get_linear_schedule_with_warmup(1e-3, 10, 100))
"""

# ruff: noqa: I001, E501  (grouped by concept, not alphabetically; one import per line)

# transformers' optimizers (4.49) and their states; fused_adamw (and fused_schedule_free_adamw,
# fused_ademamix): adamw's (schedule_free_adamw's, ademamix's) update and apply_updates in one
# in-place pass.
from funcopt._adamw import AdamWState as AdamWState
from funcopt._adamw import adamw as adamw
from funcopt._fused_adamw import FusedOptimizer as FusedOptimizer
from funcopt._fused_adamw import fused_adamw as fused_adamw
from funcopt._fused_schedule_free import fused_schedule_free_adamw as fused_schedule_free_adamw
from funcopt._fused_ademamix import fused_ademamix as fused_ademamix
from funcopt._adafactor import AdafactorState as AdafactorState
from funcopt._adafactor import adafactor as adafactor
from funcopt._adafactor import adafactor_learning_rates as adafactor_learning_rates
from funcopt._adam_weight_decay import AdamWeightDecayState as AdamWeightDecayState
from funcopt._adam_weight_decay import adam_weight_decay as adam_weight_decay
from funcopt._create_optimizer import create_optimizer as create_optimizer

# torch.optim's algorithms: AdamW (for-loop and fused CPU paths), Adam, SGD, Adagrad, RMSprop.
from funcopt._adam_torch import AdamTorchState as AdamTorchState
from funcopt._adam_torch import adamw_torch as adamw_torch
from funcopt._adam_torch import adamw_torch_fused as adamw_torch_fused
from funcopt._adam_torch import adam_torch as adam_torch
from funcopt._fused_adamw_torch import fused_adamw_torch as fused_adamw_torch
from funcopt._sgd import SGDState as SGDState
from funcopt._sgd import sgd as sgd
from funcopt._adagrad import AdagradState as AdagradState
from funcopt._adagrad import adagrad as adagrad
from funcopt._rmsprop import RMSpropState as RMSpropState
from funcopt._rmsprop import rmsprop as rmsprop

# The Trainer's menu: bitsandbytes' 32-bit optimizers and its 8-bit (blockwise quantized) states.
from funcopt._lion import LionState as LionState
from funcopt._lion import lion as lion
from funcopt._ademamix import AdEMAMixState as AdEMAMixState
from funcopt._ademamix import ademamix as ademamix
from funcopt._rmsprop_bnb import RMSpropBnbState as RMSpropBnbState
from funcopt._rmsprop_bnb import rmsprop_bnb as rmsprop_bnb
from funcopt._adamw_bnb import AdamWBnbState as AdamWBnbState
from funcopt._adamw_bnb import adamw_bnb as adamw_bnb
from funcopt._adamw_bnb import AdamW8bitState as AdamW8bitState
from funcopt._adamw_bnb import adamw_8bit as adamw_8bit
from funcopt._lion_8bit import Lion8bitState as Lion8bitState
from funcopt._lion_8bit import lion_8bit as lion_8bit
from funcopt._ademamix_8bit import AdEMAMix8bitState as AdEMAMix8bitState
from funcopt._ademamix_8bit import ademamix_8bit as ademamix_8bit
from funcopt._rmsprop_8bit import RMSprop8bitState as RMSprop8bitState
from funcopt._rmsprop_8bit import rmsprop_8bit as rmsprop_8bit

# The Trainer's menu: schedule-free AdamW, SGD and RAdam (package schedulefree), train/eval weights.
from funcopt._schedule_free import ScheduleFreeState as ScheduleFreeState
from funcopt._schedule_free import schedule_free_adamw as schedule_free_adamw
from funcopt._schedule_free import schedule_free_sgd as schedule_free_sgd
from funcopt._schedule_free import schedule_free_radam as schedule_free_radam
from funcopt._schedule_free import schedule_free_eval_params as schedule_free_eval_params
from funcopt._schedule_free import schedule_free_train_params as schedule_free_train_params

# The Trainer's menu: GrokAdamW, optimi's StableAdamW, GaLore.
from funcopt._grokadamw import GrokAdamWState as GrokAdamWState
from funcopt._grokadamw import grokadamw as grokadamw
from funcopt._stable_adamw import StableAdamWState as StableAdamWState
from funcopt._stable_adamw import stable_adamw as stable_adamw
from funcopt._galore import galore_target_mask as galore_target_mask
from funcopt._galore_adamw import GaLoreAdamWState as GaLoreAdamWState
from funcopt._galore_adamw import galore_adamw as galore_adamw
from funcopt._galore_adafactor import GaLoreAdafactorState as GaLoreAdafactorState
from funcopt._galore_adafactor import galore_adafactor as galore_adafactor

# The Trainer's front door (transformers 5.x): its optim menu by name, its recipe in one call,
# its gradient clipping (torch.nn.utils.clip_grad_norm_) and weight-decay rule.
from funcopt._menu import get_optimizer as get_optimizer
from funcopt._training_args import from_training_args as from_training_args
from funcopt._clipping import ClipGradNormState as ClipGradNormState
from funcopt._clipping import clip_grad_norm as clip_grad_norm
from funcopt._clipping import get_total_norm as get_total_norm
from funcopt._trainer_mask import trainer_decay_mask as trainer_decay_mask

# Parameter names and masks.
from funcopt._names import name_mask as name_mask
from funcopt._names import param_names as param_names

# Schedules (HF's LambdaLR family with 5.x's additions, TF's warmup), get_scheduler,
# reduce-on-plateau, GreedyLR.
from funcopt._lambda_schedules_power import get_constant_schedule as get_constant_schedule
from funcopt._lambda_schedules_power import get_constant_schedule_with_warmup as get_constant_schedule_with_warmup
from funcopt._lambda_schedules_power import get_linear_schedule_with_warmup as get_linear_schedule_with_warmup
from funcopt._lambda_schedules_cosine import get_cosine_schedule_with_warmup as get_cosine_schedule_with_warmup
from funcopt._lambda_schedules_cosine import get_cosine_with_hard_restarts_schedule_with_warmup as get_cosine_with_hard_restarts_schedule_with_warmup
from funcopt._lambda_schedules_power import get_polynomial_decay_schedule_with_warmup as get_polynomial_decay_schedule_with_warmup
from funcopt._lambda_schedules_power import get_inverse_sqrt_schedule as get_inverse_sqrt_schedule
from funcopt._lambda_schedules_cosine import get_cosine_with_min_lr_schedule_with_warmup as get_cosine_with_min_lr_schedule_with_warmup
from funcopt._lambda_schedules_cosine import get_cosine_with_min_lr_schedule_with_warmup_lr_rate as get_cosine_with_min_lr_schedule_with_warmup_lr_rate
from funcopt._lambda_schedules_wsd import get_wsd_schedule as get_wsd_schedule
from funcopt._warmup_decay import warmup as warmup
from funcopt._get_scheduler import SchedulerType as SchedulerType
from funcopt._get_scheduler import get_scheduler as get_scheduler
from funcopt._plateau import ReduceOnPlateauState as ReduceOnPlateauState
from funcopt._plateau import reduce_on_plateau as reduce_on_plateau
from funcopt._greedy_lr import GreedyLRState as GreedyLRState
from funcopt._greedy_lr import StreamingAverageState as StreamingAverageState
from funcopt._greedy_lr import greedy_lr as greedy_lr

# Sharding and gradient accumulation.
from funcopt._sharding import state_shardings as state_shardings
from funcopt._accumulation import GradientAccumulatorState as GradientAccumulatorState
from funcopt._accumulation import accumulate as accumulate
from funcopt._accumulation import accumulator_init as accumulator_init
from funcopt._accumulation import accumulator_reset as accumulator_reset
from funcopt._accumulation import gradient_accumulation as gradient_accumulation

__version__ = "0.1.0"

__all__ = [
    "AdamWState", "adamw", "FusedOptimizer", "fused_adamw", "fused_schedule_free_adamw",
    "fused_ademamix",
    "AdafactorState", "adafactor",
    "adafactor_learning_rates", "AdamWeightDecayState", "adam_weight_decay", "create_optimizer",
    "AdamTorchState", "adamw_torch", "adamw_torch_fused", "adam_torch", "fused_adamw_torch",
    "SGDState", "sgd", "AdagradState", "adagrad", "RMSpropState", "rmsprop",
    "LionState", "lion", "AdEMAMixState", "ademamix", "RMSpropBnbState", "rmsprop_bnb",
    "AdamWBnbState", "adamw_bnb", "AdamW8bitState", "adamw_8bit", "Lion8bitState", "lion_8bit",
    "AdEMAMix8bitState", "ademamix_8bit", "RMSprop8bitState", "rmsprop_8bit",
    "ScheduleFreeState", "schedule_free_adamw", "schedule_free_sgd", "schedule_free_radam",
    "schedule_free_eval_params", "schedule_free_train_params",
    "GrokAdamWState", "grokadamw", "StableAdamWState", "stable_adamw", "galore_target_mask",
    "GaLoreAdamWState", "galore_adamw", "GaLoreAdafactorState", "galore_adafactor",
    "get_optimizer", "from_training_args", "ClipGradNormState", "clip_grad_norm", "get_total_norm",
    "trainer_decay_mask",
    "name_mask", "param_names",
    "get_constant_schedule", "get_constant_schedule_with_warmup",
    "get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup",
    "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup", "get_inverse_sqrt_schedule",
    "get_cosine_with_min_lr_schedule_with_warmup",
    "get_cosine_with_min_lr_schedule_with_warmup_lr_rate", "get_wsd_schedule", "warmup",
    "SchedulerType", "get_scheduler", "ReduceOnPlateauState", "reduce_on_plateau", "GreedyLRState",
    "StreamingAverageState", "greedy_lr",
    "state_shardings", "GradientAccumulatorState", "accumulate", "accumulator_init",
    "accumulator_reset", "gradient_accumulation",
]
