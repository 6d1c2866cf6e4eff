"""Fine-tunes the released MARCO model on a lab's own labelled drop images.

MARCO transfers poorly to an imager it has not seen ("Moving beyond MARCO", PLOS ONE 2023; CHiMP),
so a lab fine-tunes the release on its own pictures rather than trusting it as is:

  python -m marco_jax.import_release --savedmodel savedmodel --workdir /data/marco_release
  python -m marco_jax.main --config configs/finetune.py --workdir /data/runs/finetune \
    --config.init_from=/data/marco_release --config.dataset.manual_dir=/data/our_drops \
    --config.dataset.data_dir=/data/tfds

`/data/our_drops` holds the `full` builder's folder form (train/<class>/*.jpg and
test/<class>/*.jpg, or <class>/*.jpg with a hashed test split) or its CSV form; class names and
their aliases are in tfds_marco/marco/label_map.tsv (see tfds_marco/marco/README.md).
`init_from` may also be the release directory itself.
"""

import pathlib

import ml_collections

from marco_jax.config_utils import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config(pathlib.Path(__file__).with_name("default.py"))
    # Required on the command line: the weights to start from, and the lab's images.
    config.init_from = ml_collections.config_dict.placeholder(str)
    config.dataset.config_name = "full"  # the manual (lab's own) images
    # A workstation's batch; the linear rule scales the learning rate with it.
    config.input.global_batch_size = 32
    config.input.eval_batch_size = 32
    # A tenth of the paper's 0.045: the weights are already good; large steps would forget what
    # the 500k release images taught before the few lab images can teach anything.
    config.optimizer.learning_rate = 0.0045
    config.optimizer.lr_decay_epochs = 1.0  # x0.94 every epoch: a short run still decays
    # Lab sets have hundreds to a few thousand images: a few passes, stopped early on the test
    # split's accuracy (patience counts evaluations).
    config.num_epochs = 20.0
    config.eval_every_steps = 200
    config.checkpoint_every_steps = 200
    config.early_stopping_patience = 5
    config.log_every_steps = 20
    # Shorter averaging windows than the paper's 0.9999 / 0.9997, which span more steps than a
    # fine-tuning run has: the EMA would still be mostly the release's weights at the end, and the
    # BatchNorm statistics would barely move towards the new imager's.
    config.optimizer.ema_decay = 0.999
    config.model.batch_norm_momentum = 0.999
    config.profile_steps = 0
    return config
