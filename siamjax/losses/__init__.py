"""The loss library: every training signal for siamese encoders, a registry by name, and
GradCache. `get_loss(name, **options)` is the uniform `LossFn` the training step calls."""
from siamjax.losses.directions import DIRECTIONS, HARDNESS_MODES, PARTITION_MODES, MnrlSpec
from siamjax.losses.distill import distill_kl_div_loss, embed_distill_loss, margin_mse_loss
from siamjax.losses.gist import gist_loss
from siamjax.losses.gradcache import grad_cache_value_and_grad, make_grad_cache_value_and_grad
from siamjax.losses.in_batch import (infonce_loss, learnable_scale, make_infonce_fn, make_sigmoid_fn,
                                     shard_over_batch, sharded_infonce, sharded_sigmoid, sigmoid_loss)
from siamjax.losses.pairs import (angle_loss, contrastive_loss, cosent_loss, cosine_mse_loss,
                                  init_softmax_head, mega_batch_margin_loss, online_contrastive_loss,
                                  softmax_loss)
from siamjax.losses.registry import (GUIDED_LOSSES, LOSS_NAMES, TEACHER_LOSSES, LossFn, get_loss,
                                     init_loss_params, matryoshka)
from siamjax.losses.regularizers import gor_loss
from siamjax.losses.triplets import (batch_all_triplet_loss, batch_hard_triplet_loss,
                                     batch_semi_hard_triplet_loss, triplet_loss)

__all__ = [
    "DIRECTIONS", "GUIDED_LOSSES", "HARDNESS_MODES", "LOSS_NAMES", "LossFn", "MnrlSpec", "PARTITION_MODES",
    "TEACHER_LOSSES", "angle_loss", "batch_all_triplet_loss", "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss", "contrastive_loss", "cosent_loss", "cosine_mse_loss",
    "distill_kl_div_loss", "embed_distill_loss", "get_loss", "gist_loss", "gor_loss",
    "grad_cache_value_and_grad", "infonce_loss", "init_loss_params", "init_softmax_head",
    "learnable_scale", "make_grad_cache_value_and_grad", "make_infonce_fn", "make_sigmoid_fn",
    "margin_mse_loss", "matryoshka", "mega_batch_margin_loss", "online_contrastive_loss",
    "shard_over_batch", "sharded_infonce", "sharded_sigmoid", "sigmoid_loss", "softmax_loss", "triplet_loss",
]
