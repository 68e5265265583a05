"""Names of the model's outputs.

`KMaXDeepLab.__call__` returns a dict with these keys (the final prediction)
plus AUXILIARY_PREDICTIONS, a list with one dict per transformer layer holding
CLASS_LOGITS, MASK_LOGITS and PIXEL_FEATURE at that layer's stride.

  CLASS_LOGITS     [B, N, K + 1]  per cluster center: things, stuff, void
  MASK_LOGITS      [B, h, w, N]   h, w = (H - 1) / 4 + 1 (stride 4)
  PIXEL_FEATURE    [B, h, w, E]   L2-normalised pixel embedding
  SEMANTIC_LOGITS  [B, h, w, C]   auxiliary semantic head, channel = dataset id
CMT-DeepLab's layers add REFERENCE_MASKS [B, h, w, N] (values in (0, 1]) to
their auxiliary predictions.
"""

CLASS_LOGITS = 'class_logits'
MASK_LOGITS = 'mask_logits'
PIXEL_FEATURE = 'pixel_feature'
SEMANTIC_LOGITS = 'semantic_logits'
AUXILIARY_PREDICTIONS = 'auxiliary_predictions'
REFERENCE_MASKS = 'reference_masks'

PREDICTION_KEYS = (CLASS_LOGITS, MASK_LOGITS, PIXEL_FEATURE)
