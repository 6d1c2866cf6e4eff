"""The released MARCO model (Bruno et al. 2018): its network, preprocessing and training setup.

The network is the one whose weights labs have (`savedmodel.zip`, the paper's ref. 47): every
variable of the release's graph by name and shape (tests/test_release.py checks it against
shared/released_marco/saved_model.pb). Import those weights with
  python -m marco_jax.import_release --savedmodel DIR --workdir OUT
or train it (after building the `full` dataset, see tfds_marco/marco/README.md):
  python -m marco_jax.main --config configs/default.py --workdir /tmp/marco_full

Sources: "graph" is the release's saved_model.pb (see shared/released_marco/README.md); a
section is the paper's. Where they disagree the graph wins: it is the network behind the
paper's 94.5 %. configs/table3.py keeps the reading of the paper's Table 3 instead.
"""

import ml_collections


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
    # Graph: the depth of every conv, as a per-layer table (model/depth_tables/*.tsv); the
    # caps of Table 3 (configs/table3.py) describe it only roughly.
    model.depth_table = "marco_release"
    model.depth_caps = {}  # per block, used for layers the table does not list
    model.depth_multiplier = 1.0  # TF-slim's: scales every conv depth (tests use ~0.1)
    model.min_depth = 16  # TF-slim's floor for scaled depths
    model.dropout_rate = 0.0  # "all dropout regularizers were removed", section 3
    model.aux_logits = True  # graph: the AuxLogits head on Mixed_6e (training only)
    model.aux_loss_weight = 0.4  # TF-slim's weight for the auxiliary loss
    model.batch_norm_momentum = 0.9997  # graph: FusedBatchNorm moving averages, decay 0.9997
    model.batch_norm_epsilon = 1e-3  # graph: FusedBatchNorm epsilon 0.001
    model.compute_dtype = "float32"  # "bfloat16" on accelerators; parameters stay float32
    # Speed switches measured by bench/train_step.py (the defaults are the exact computation):
    # one-pass BatchNorm variance (E[x^2] - E[x]^2, one read of each activation less), and
    # "convs": keep only the convolution outputs for the backward pass, recomputing BatchNorm,
    # ReLU and pools there (less memory traffic and footprint, more arithmetic).
    model.batch_norm_fast_variance = False
    model.remat = "none"  # or "convs"

    # ---------------------------------------------------------------- data
    config.dataset = dataset = ml_collections.ConfigDict()
    dataset.name = "marco"  # the TFDS builder in tfds_marco/marco
    dataset.config_name = "full"  # "full" (manual download) or "synthetic" (generated)
    dataset.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir; None = default
    dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # where the release lies
    # Fields of the builder config to change, e.g. {"num_train": 10000} for a bigger synthetic set;
    # the changed config is built under its own name (see tfds_marco/marco/README.md).
    dataset.config_overrides = {}
    # "jpeg" or "png": train on a copy of the train split stored pre-scaled for this config's
    # preprocessing (shorter side image_size / central_fraction: 599 px here), built on first use
    # next to the original; decodes several times faster (bench/input_pipeline.py). The test
    # split stays full size, so evaluation is the release's. "" trains on the images as given.
    dataset.prescale = ""
    dataset.train_split = "train"
    dataset.eval_split = "test"

    config.input = inp = ml_collections.ConfigDict()
    inp.global_batch_size = 64  # section 3, "Training"
    inp.eval_batch_size = 64
    # Section 3, "Data Preprocessing and Augmentation": random 599x599 patches for training; for
    # evaluation the image is center cropped and resized to 599x599. `central_fraction` is the side
    # of that center crop relative to the shorter image side; training cuts its random patches at
    # the same scale. Graph: the whole central square (resize_image_with_crop_or_pad to
    # min(height, width)), then ResizeBilinear from float [0, 1] with TF1's legacy pixel centres
    # and no antialiasing, then (x - 0.5) * 2.
    inp.central_fraction = 1.0
    inp.resize_method = "tf1_bilinear"  # or "pil_antialias" (Pillow's antialiased bilinear)
    # Graph: DecodeJpeg with dct_method "", which TensorFlow maps to libjpeg's fast integer DCT.
    inp.jpeg_dct = "fast"  # or "accurate" (libjpeg's slow integer DCT, as Pillow decodes)
    inp.brightness_delta = 32.0 / 255.0  # +-32 out of 255
    inp.saturation_range = (0.5, 1.5)  # 50 % to 150 %
    inp.hue_delta = 0.2  # +-0.2 (hue in [0, 1), i.e. "out of 0.5" each way)
    inp.contrast_range = (0.5, 1.5)  # 50 % to 150 %
    inp.flip_left_right_prob = 0.5
    inp.flip_up_down_prob = 0.5  # images have no preferred vertical direction
    inp.random_rot90 = False  # the paper did not use extra 90-degree rotations
    # -1: chosen from the host's cores (marco_jax/data/parallelism.py: a worker per core but one,
    # 1 thread each, 2 batches buffered per worker); a number fixes it.
    inp.num_workers = -1  # grain worker processes per host (0 = in-process)
    inp.prefetch_buffer_size = -1  # batches buffered per worker
    inp.shuffle_seed = 0
    # Threads per grain process, each building a whole batch. Decoding is CPU-bound: at 599 px on
    # 2 cores, 2 threads per worker were ~2x slower than 1; more help only on remote storage.
    inp.read_threads = -1

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
    opt.l2_regularization = 4e-5  # graph: an L2Loss x 4e-5 on every kernel (slim's regularizer)
    opt.weight_decay = 0.0  # decoupled (AdamW-style) decay; the graph has none
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
    # Start training from these weights: an imported or trained workdir (its EMA weights), or a
    # release directory (saved_model.pb + variables/). Layers whose shape differs (a new
    # num_classes) keep their fresh initialisation: the Logits and AuxLogits heads.
    config.init_from = ""
    return config
