"""File names and format constants shared by the mask artifact code."""

CONFIG_NAME = "leank_config.json"
MASKS_NAME = "leank_masks.safetensors"
MODEL_CARD_NAME = "README.md"
MASK_FORMAT_VERSION = 1
LIBRARY_NAME = "leank_hf"
ATTN_IMPLEMENTATION = "leank"
MODEL_SUBFOLDER = "leank"  # where masks sit next to a model's weights, found without `subfolder=`
