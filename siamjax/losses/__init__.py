"""The loss library: every training signal for siamese encoders, a registry by name, and
GradCache. `get_loss(name, **options)` is the uniform `LossFn` the training step calls."""
from siamjax.losses.gradcache import grad_cache_value_and_grad, make_grad_cache_value_and_grad
from siamjax.losses.in_batch import (infonce_loss, learnable_scale, make_infonce_fn, make_sigmoid_fn,
                                     shard_over_batch, sharded_infonce, sharded_sigmoid, sigmoid_loss)
from siamjax.losses.pairs import (angle_loss, contrastive_loss, cosent_loss, cosine_mse_loss,
                                  init_softmax_head, online_contrastive_loss, softmax_loss)
from siamjax.losses.registry import LOSS_NAMES, TEXT_ID_LOSSES, LossFn, get_loss, init_loss_params, matryoshka
from siamjax.losses.triplets import (batch_all_triplet_loss, batch_hard_triplet_loss,
                                     batch_semi_hard_triplet_loss, triplet_loss)

__all__ = [
    "LOSS_NAMES", "LossFn", "TEXT_ID_LOSSES", "angle_loss", "batch_all_triplet_loss", "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss", "contrastive_loss", "cosent_loss", "cosine_mse_loss", "get_loss",
    "grad_cache_value_and_grad", "infonce_loss", "init_loss_params", "init_softmax_head",
    "learnable_scale", "make_grad_cache_value_and_grad", "make_infonce_fn", "make_sigmoid_fn",
    "matryoshka", "online_contrastive_loss", "shard_over_batch", "sharded_infonce", "sharded_sigmoid",
    "sigmoid_loss", "softmax_loss", "triplet_loss",
]
