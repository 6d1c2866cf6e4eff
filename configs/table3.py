"""The paper's setup: MARCO Inception-v3 at 599 px on the full MARCO release (Bruno et al. 2018).

Run (after building the `full` dataset from a manual download, see tfds_marco/marco/README.md):
  python -m marco_jax.main --config configs/default.py --workdir /tmp/marco_full

Every number below that comes from the paper cites its section; everything else is a
documented choice the paper leaves open.
"""

import ml_collections

# Table 3: the maximum depth of every convolution inside these named layers.
PAPER_DEPTH_CAPS = {
    "Conv2d_4a_3x3": 144,
    "Mixed_6b": 128,
    "Mixed_6c": 144,
    "Mixed_6d": 144,
    "Mixed_6e": 96,
    "Mixed_7a": 96,
    "Mixed_7b": 192,
    "Mixed_7c": 192,
}


def get_config() -> ml_collections.ConfigDict:
    """Returns the paper's configuration."""
    config = ml_collections.ConfigDict()

    # ---------------------------------------------------------------- model
    config.model = model = ml_collections.ConfigDict()
    model.name = "marco_inception_v3"  # or "inception_v3" (the standard ImageNet variant)
    model.num_classes = 4  # crystals, precipitate, clear, other (section 2, "Labeling")
    model.image_size = 599  # section 3, "Model Architecture"
    # Extra 3x3 stride-2 VALID conv of depth 16 before Conv2d_1a_3x3 (599 -> 299), section 3.
    model.stem_conv_depth = 16
    model.depth_caps = dict(PAPER_DEPTH_CAPS)  # Table 3
    model.depth_multiplier = 1.0  # TF-slim's: scales every conv depth (tests use ~0.1)
    model.min_depth = 16  # TF-slim's floor for scaled depths
    model.dropout_rate = 0.0  # "all dropout regularizers were removed", section 3
    model.aux_logits = False  # auxiliary head on Mixed_6e; the paper does not use one
    model.aux_loss_weight = 0.4  # TF-slim's weight for the auxiliary loss, used only if enabled
    model.batch_norm_momentum = 0.9997  # TF-slim inception arg scope (decay)
    model.batch_norm_epsilon = 1e-3  # TF-slim inception arg scope
    model.compute_dtype = "float32"  # "bfloat16" on accelerators; parameters stay float32

    # ---------------------------------------------------------------- data
    config.dataset = dataset = ml_collections.ConfigDict()
    dataset.name = "marco"  # the TFDS builder in tfds_marco/marco
    dataset.config_name = "full"  # "full" (manual download) or "synthetic" (generated)
    dataset.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None = default
    dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # where the release lies
    # Fields of the builder config to change, e.g. {"num_train": 10000} for a bigger synthetic set;
    # the changed config is built under its own name (see tfds_marco/marco/README.md).
    dataset.config_overrides = {}
    dataset.train_split = "train"
    dataset.eval_split = "test"

    config.input = inp = ml_collections.ConfigDict()
    inp.global_batch_size = 64  # section 3, "Training"
    inp.eval_batch_size = 64
    # Section 3, "Data Preprocessing and Augmentation": random 599x599 patches for training; for
    # evaluation the image is center cropped and resized to 599x599. `central_fraction` is the side
    # of that center crop relative to the shorter image side (TF-slim's inception eval uses 0.875);
    # training first scales the image by the same factor so both paths see the same scale.
    inp.central_fraction = 0.875
    inp.brightness_delta = 32.0 / 255.0  # +-32 out of 255
    inp.saturation_range = (0.5, 1.5)  # 50 % to 150 %
    inp.hue_delta = 0.2  # +-0.2 (hue in [0, 1), i.e. "out of 0.5" each way)
    inp.contrast_range = (0.5, 1.5)  # 50 % to 150 %
    inp.flip_left_right_prob = 0.5
    inp.flip_up_down_prob = 0.5  # images have no preferred vertical direction
    inp.random_rot90 = False  # the paper did not use extra 90-degree rotations
    inp.num_workers = 4  # grain worker processes per host (0 = in-process)
    inp.prefetch_buffer_size = 4  # batches buffered per worker
    inp.shuffle_seed = 0
    # Threads per grain process, each building a whole batch. Decoding is CPU-bound: at 599 px on
    # 2 cores, 2 threads per worker were ~2x slower than 1; more help only on remote storage.
    inp.read_threads = 1

    # ---------------------------------------------------------------- optimisation
    config.optimizer = opt = ml_collections.ConfigDict()
    opt.learning_rate = 0.045  # section 3, "Training", for a global batch of 64
    opt.lr_reference_batch_size = 64  # lr scales linearly with global_batch / this
    opt.lr_scaling = "linear"  # "linear" or "none"
    opt.rmsprop_decay = 0.9  # section 3
    opt.momentum = 0.9  # section 3
    opt.epsilon = 0.1  # section 3
    opt.lr_decay_factor = 0.94  # section 3: x0.94 ...
    opt.lr_decay_epochs = 2.0  # ... every two epochs, as a staircase
    opt.staircase = True
    opt.warmup_epochs = 0.0
    opt.weight_decay = 0.0  # off, as in the paper
    opt.label_smoothing = 0.0  # not stated in the paper
    opt.ema_decay = 0.9999  # "a running average of the training model", section 3
    opt.ema_warmup = True  # TF's num_updates rule: decay = min(decay, (1 + t) / (10 + t))

    # ---------------------------------------------------------------- schedule
    # Durations: set num_train_steps > 0, or num_epochs (used when num_train_steps is -1).
    config.num_train_steps = -1
    config.num_epochs = 260.0  # "the equivalent of 260 epochs", section 3
    config.log_every_steps = 100
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = 5000
    config.keep_checkpoints = 3  # the last K; the best by eval accuracy is kept besides
    config.early_stopping_patience = 10  # evaluations without improvement; 0 disables
    config.eval_with_ema = True  # evaluate/export the EMA weights (raw ones with False)
    config.profile_steps = 5  # steps traced by clu's profiler action (0 = off)
    config.seed = 0
    return config
