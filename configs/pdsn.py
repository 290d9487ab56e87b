"""Default run on the built-in SYNTHETIC faces, sized for a 2-core CPU.

Command:
  python -m pdsn_jax.main --config=configs/pdsn.py --workdir=runs/pdsn

Cost: 13.0 min on 2 CPU cores, measured alone 2026-12-07 at 8d2ff03 (trunk 3.8 min, stage I
1.2, stage II 0.5, Baseline 1.0, fine-tune 0.9, Table 3's generators and dictionary 1.5,
detector 1.2, evaluation 1.8).

IResNet-18 at width 0.25, 112x96: the trunk 300 steps of 32, stage I 90 steps of 16 faces x
10 images, stage II 512 pairs per block, the Baseline and fine-tune 50 steps of 32 each, Table
3's generators and dictionary, the detector, the evaluation (every protocol, 3 checkpoints,
the distractor stores, ablations). Every field can be overridden, e.g.
--config.trunk.num_epochs=2 --config.model.width=0.5.
"""

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.prng_impl = "rbg"  # or "threefry2x32"; see pdsn_jax.train.training.root_key
  # a training stage stops, before saving, when its parameter norm exceeds this many times
  # the starting one (divergence; <= 0: only non-finite values stop it)
  c.max_param_norm_growth = 10.0
  # > 0: a jax.profiler trace of this many steps (after the compiling one) of every training
  # stage, into <workdir>/<stage>/profile
  c.profile_steps = 0
  # comma-separated, run in order: stage 0, I, II, the Baseline, stage III fine-tuning,
  # Table 3's lambda=0 generators, the occlusion detector, then every protocol and
  # ablation into results.md
  c.stages = "trunk,pdsn,dictionary,baseline,finetune,lambda0,detector,evaluate"
  # stages whose outputs, made under other config fields, may be moved aside and made again
  # (pdsn_jax.run.provenance); without it such a rerun stops and names the fields
  c.overwrite = ""

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # "synthetic" (built-in, no files) or "folders"
  c.data.image_size = (112, 96)  # (height, width) of the aligned face
  c.data.alignment = "arcface"  # 5-point template: "arcface" (112x96) or "dlib_chip" (150x150)
  c.data.flip = True
  c.data.num_workers = 0  # grain worker processes (0: load in the main process)
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_identities=200, images_per_identity=12, eval_identities=100,
      eval_images_per_identity=6, seed=0, cache=True))
  c.data.folders = ml_collections.ConfigDict(dict(
      root="", landmarks="", skip_bad_images=False, min_images=2, heldout_identities=50,
      distractor_identities=0,  # identities set aside (not trained on) for distractors
      require_landmarks=False,  # an image without a landmarks row: error (else centre crop)
      strict_landmarks=False))  # a landmarks row naming a missing file: error (else logged)
  # insightface RecordIO (train.rec + train.idx, e.g. faces_webface_112x112), no mxnet needed
  c.data.recordio = ml_collections.ConfigDict(dict(path="", index="", heldout_identities=50,
                                                   distractor_identities=0))

  c.model = ml_collections.ConfigDict()
  c.model.kind = "iresnet"  # or "dlib": dlib's pretrained ResNet (configs/dlib_trunk.py)
  c.model.dlib_u = "4x4"  # model.kind="dlib": U = the 4x4x256 or the 8x8x128 map
  c.model.depth = 18
  c.model.width = 0.25  # stage widths 16-32-64-128
  c.model.embedding_dim = 256
  c.model.dropout = 0.0
  c.model.dtype = "float32"
  # faces per call of a network in inference mode inside a jitted step (the frozen trunk's U,
  # the evaluation's features): 0 = 8 on CPU, where XLA runs MobileFaceNet about 1.9x as fast
  # as over 128 faces, the whole batch on GPU/TPU. Speed only: the outputs are the same
  c.model.forward_chunk = 0

  c.cosface = ml_collections.ConfigDict(dict(scale=30.0, margin=0.35))

  c.trunk = common.training(
      num_epochs=4.0, warmup_steps=30, log_every=20, checkpoint_every=50, keep_checkpoints=3,
      eval_every=100,  # <= 0: only at the end
      init_from="",  # a checkpoints/ folder of another run (params + BN stats); with
      # model.kind="dlib" a dlib .dat file, or "dlib" for face_recognition_models' one
      freeze_backbone=False)  # True: only the CosFace classifier trains

  c.eval = ml_collections.ConfigDict(dict(
      num_pairs=600, batch_size=64, seed=1,  # also the training stages' held-out verification
      ar_gallery_images=3,  # AR protocol 1 gallery images per subject (protocol 2: one)
      identification_root="",  # subjects for the AR-style protocols; "" = held-out identities
      identification_landmarks="",  # its landmarks TSV ("" = centre crop)
      num_distractors=500,  # MegaFace-style identification: gallery + N other identities
      # the distractors' U on disk (evaluate/distractors_<stage>/), read shard by shard:
      # "float32" (exact), "float16" or "int8" (per-face, per-channel scales)
      gallery_dtype="float32", gallery_shard_size=4096,
      # the trunk's bottom (below finetune.trainable="top") of the evaluation images, kept in
      # memory up to this size so checkpoints sharing it run only their top (0: never)
      bottom_cache_gib=4.0,
      search_path="auto",  # "affine": one matrix product for every FDM (affine F only),
      # "general": F applied per FDM, "auto": the faster in a timed trial when F is affine
      occluder_dir="",  # occluders of the test probes; "" = those of config.occlusion
      occluder_split="test",  # ... of this split of occlusion.splits ("select": choosing)
      procedural=True,  # with occluder_dir: also the built-in occluders
      procedural_categories=("sunglasses", "mask", "hand", "object"),  # ... of these kinds
      occlusion_source="ground_truth",  # where test-time occlusion masks come from; rows
      # located by the detector are added whenever the 'detector' stage has run
      # the rows compared: "Name=stage" (that stage's network, F(U)) or "Name=stage+fdm"
      # (under the dictionary's FDMs, F(M * U)); "+trunk_when_clean": the variant that embeds
      # faces with no occluded block with the trunk's F instead (evaluators.py)
      models=("Trunk=trunk", "Baseline=baseline", "PDSN=trunk+fdm",
              "PDSN + fine-tune=finetune+fdm"),
      # what each row is measured by: protocol name -> its own settings (each protocol's
      # Settings in pdsn_jax/evaluation/protocols/<module>.py: keys and defaults; {} = the
      # defaults). Pair verification (clean + occluded second image, per condition; its
      # thresholds are what `verify` decides with; pairs_file / pairs_bin for a pairs
      # file), AR-style (pasted) protocols 1/2 rank-1, identification among distractors;
      # also "ar_real" (AR's real sunglasses and scarves: root, alignment, subjects,
      # distractor_sizes) and "lfw_distractors" (LFW: root, landmarks, probe_every, sizes)
      protocols=dict(
          verification=dict(conditions=("sunglasses", "mask", "hand", "object", "blocks")),
          ar_p1={}, ar_p2={}, distractors={}),
      ablations=True,  # Tables 1-3 on the trunk + dictionary
      tau_sweep=(0.0, 0.05, 0.15, 0.25, 0.35, 0.45)))

  # Occlusion synthesis (pdsn_jax/data/occlusion.py).
  c.occlusion = ml_collections.ConfigDict(dict(
      occluder_dir="",  # folder of <category>/**/*.png; "" = built-in procedural set only
      procedural=True,  # include the built-in occluders
      neighbour_prob=0.5,  # also occlude one 4-neighbour of the target block
      min_overlap=0.5,  # block counts as occluded at this overlap
      overlap="coverage",  # "coverage" (intersection / block area) or "iou"
      exact_blocks=True,  # a "block j" sample flags exactly j (+ the neighbour), nothing else
      # the occluder files split three ways by globs relative to occluder_dir (split them by
      # source, so that one source's style never reaches two splits): "train" for stages I-III
      # and the detector, "select" where settings are chosen (``:select`` configs, the
      # detector's held-out score), "test" for the evaluation only; a file no glob names is
      # unused. All empty: every detector.heldout_every-th file of a folder is test, the one
      # before it select (data/occlusion.file_split)
      splits=ml_collections.ConfigDict(dict(train=(), select=(), test=())),
      procedural_categories=("sunglasses", "mask", "hand", "object"),  # training's drawings
  ))

  # Stage I: the 9 mask generators (trunk frozen).
  c.pdsn = common.training(
      batch_size=16, num_epochs=0.6, learning_rate=0.01,  # "adam" suits a tiny trunk (tiny.py)
      warmup_steps=10,
      lambda_l1=10.0,  # paper, Eq. 5 (with lambda_rule="fixed")
      # "same_scale": the paper's rule, lambda = CE / L1 of the starting generators on
      # scale_batches fixed training batches (measured, logged, in the stage's summary)
      lambda_rule="same_scale", scale_batches=4,
      # > 0: at every checkpoint, the dictionary of this many fixed training pairs per block;
      # the stage stops once each item's discarded set overlaps the last check's (Jaccard) by
      # converge_overlap, else at its step budget (pdsn_jax/method/pdsn_probe.py)
      converge_pairs=0, converge_overlap=0.95,
      # where the overlap rule and stage II take the generators' BatchNorm statistics from:
      # "running", the averages training keeps (momentum 0.9, they move at any learning rate);
      # "recomputed", at every checkpoint the plain statistics of statistics_pairs fixed
      # training pairs a block, the weights fixed (pdsn_jax/method/generator_statistics.py)
      generator_statistics="running", statistics_pairs=512,
      # > 0 (needs converge_pairs): at each check whose minimum overlap rose by less than
      # plateau_gain since the check checkpoint_every steps before, the rate is multiplied by
      # this ("reduce on plateau"; with schedule="constant" the checks alone lower the rate)
      plateau_decay=0.0, plateau_gain=0.05,
      # updates per batch: its U (the frozen trunk's forward, ~60% of a step on a CPU) serves
      # this many generator updates in a row (the learning-rate schedule counts updates)
      reuse=1,
      # the step's batch_size as this many consecutive batches, one after another inside one
      # jitted step (reuse updates each): what a step costs besides its updates (its dispatch,
      # state and metrics) is paid once per this many (over the bank, 4 gave 6-13% more
      # updates/s than 1: docs/results.md)
      sub_batches=1,
      # "online": each batch's pairs drawn and put through the frozen trunk as it comes;
      # "bank": shuffled epochs over the bank stage's stored U (config.bank), no trunk pass
      source="online",
      loss="paper",  # "paper": CE(occluded) + lambda*L1; "released": 0.5 CE(clean) + 0.5 CE(occ)
      differential=True,  # False: Table 3's ablation, input U(x_j) and lambda taken as 0
      mask_bias_init=0.0,  # generators' last BN shift at start: first masks ~sigmoid(this)
      mask_scale_init=1.0,  # its scale at start: the spread of the masks' logits
      # > 0: the generators stage II uses, and the overlap rule checks, are a running average
      # of the trained ones over updates (this decay per update); 0: the trained ones
      ema_decay=0.0)

  # Stage III fine-tuning and the Baseline: same budget, same occluded faces (finetune.py).
  c.finetune = common.training(
      num_epochs=0.67, learning_rate=0.01, warmup_steps=5, eval_every=-1,
      clean_prob=0.25,  # share of clean faces (under the all-ones mask) ...
      clean_fdm_prob=0.0,  # ... of which this share gets a random occlusion's FDM (a gallery face)
      conditions=("sunglasses", "mask", "hand", "object", "blocks"),
      loss="cosface",  # or "distill": toward the frozen trunk's embedding of the clean face
      trainable="all")  # "top": the layers at U's resolution + F; "head": only F (after U)

  # The occlusion detector (stages/detector.py): a U-Net-style FCN on occluded faces.
  c.detector = common.training(
      num_epochs=1.6, optimizer="adam", learning_rate=0.003, weight_decay=1e-4, warmup_steps=10,
      widths=(16, 32, 64, 96),  # encoder channels per scale (decoder mirrors them)
      input_scale=0.5,  # the net sees the face at this scale; logits are upsampled back
      clean_prob=0.15,  # share of faces without occluder
      threshold=0.5,  # probability above which a pixel counts as occluded
      heldout_every=4,  # without occlusion.splits: every 4th occluder file per folder is test
      # what users' photos look like and training faces do not (stages/detector.AUGMENTS):
      # scarves (and drawn cloth), unlabelled clear eyeglasses, specular highlights on
      # occluders, grey, low resolution, blur, light, tight crops
      augment=("scarf", "eyeglasses", "cloth", "highlights", "grey", "lowres", "blur", "light",
               "border"),
      eval_images=400,
      # AR's real photos of development subjects (1-26) with their ground-truth masks as this
      # share of the training records (0: none); ar_subjects: which of them (empty: all 26;
      # a cross-validation fold names half); ar_alignment as eval.protocols.ar_real's
      ar_share=0.0, ar_root="", ar_subjects=(), ar_alignment="landmarks")

  # The face finder (stages/face_finder.py): BlazeFace's short-range model tuned on occluded,
  # grey, low-resolution photos by distillation from the shipped model (data/face_tuning.py).
  c.face_finder = common.training(
      num_steps=2000, optimizer="adam", learning_rate=3e-4, weight_decay=0.0,
      checkpoint_every=250, log_every=25,  # 2,000 steps: chosen over 800 (docs/data.md)
      kind_probs=(0.2, 0.25, 0.2, 0.2, 0.15),  # clean, mask, scarf, sunglasses, face erased
      face_px=(24.0, 80.0),  # the face's width in the 128-px frame
      grey_prob=0.5, lowres_prob=0.5,
      lowres_px=(16.0, 48.0),  # low resolution: the face this many px wide, then back up
      reg_weight=0.05,  # the box and keypoint L1 (px) against the score term
      cloth_prob=0.0,  # share of scarves drawn as cloth (half knitted) instead of mask files
      erased_occluder_prob=0.0,  # share of erased faces with an occluder pasted (negatives)
      fallback_score=0.0,  # the photo commands' last try with these weights (0: none)
      eval_images=300,
      # a run folder whose face_finder stage made the weights (and last try) the photo commands
      # use when this run has none of its own ("": the shipped weights then); a relative path
      # is from the directory the command runs in
      weights_from="")

  # Stage II: the dictionary of binary Feature Discarding Masks.
  c.dictionary = ml_collections.ConfigDict(dict(
      pairs_per_block=512, batch_size=32, tau=0.25, log_every=8,
      neighbour_prob=0.0,  # paper: item j's pairs occluded on block j only
      # "online": pairs_per_block pairs drawn and put through the trunk; "bank": the bank
      # stage's block-alone entries, at most pairs_per_block per block (faces x variants)
      source="online"))

  # The feature bank (stages/bank.py): U of every training face, clean and occluded on each
  # block alone and with a 4-neighbour, for stages I and II with source="bank".
  c.bank = ml_collections.ConfigDict(dict(
      variants=1,  # occluded copies of each kind per face and block
      dtype="float16",  # or "float32" (twice the size)
      batch_size=64,  # images per trunk call
      shard_faces=256))  # faces per shard: a crash loses at most one shard's work
  return c
