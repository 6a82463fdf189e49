"""Train-test overlap analysis (CLIP section 5, appendix C).

evalsets     registry of eval-set loaders in their standard on-disk layouts
predictions  CSV/Parquet predictions (id -> class index or name)
detectors    image -> code (phash: imagehash codes, Hamming similarity; embedding models)
clip_models  open_clip models built offline from a config and a checkpoint (shared)
templates    prompt templates for zero-shot classification
zeroshot     zero-shot predictions of a training checkpoint (shared with training.run)
transforms   synthetic copies (crop/zoom, aspect, rescale, rotation, JPEG, HSV, interpolation)
calibrate    per-set threshold: recall at the target precision on planted copies
search       exact top-k of eval items among training shards, mergeable per shard
stats        accuracies, binomial test, Clopper-Pearson, Bonferroni
report       report.json/md, overlap.png (figure 17), PR curves, contact sheets
run          the whole run; __main__ is the command line
"""
