"""Procedurally drawn pedestrian dataset with attribute-bound captions (the default TBPS dataset)."""

from tbps.data.synthetic.attributes import (
    BAG_TYPES,
    COLOUR_NAMES,
    COLOURS,
    HAIR_COLOURS,
    HAT_TYPES,
    LOWER_TYPES,
    OCCLUDERS,
    SHOE_TYPES,
    SKIN_TONES,
    UPPER_TYPES,
    Person,
    Shot,
    image_rng,
    sample_identities,
    sample_shot,
)
from tbps.data.synthetic.captions import make_captions, tokenize
from tbps.data.synthetic.common import RGB
from tbps.data.synthetic.config import LAYOUTS, SynthConfig
from tbps.data.synthetic.render import render_image
from tbps.data.synthetic.writer import (
    ATTRIBUTES_FILE,
    SYNTH_MARKER,
    SYNTH_VERSION,
    assign_splits,
    generate_synthetic_dataset,
)

__all__ = [
    "ATTRIBUTES_FILE",
    "BAG_TYPES",
    "COLOUR_NAMES",
    "COLOURS",
    "HAIR_COLOURS",
    "HAT_TYPES",
    "LAYOUTS",
    "LOWER_TYPES",
    "OCCLUDERS",
    "RGB",
    "SHOE_TYPES",
    "SKIN_TONES",
    "SYNTH_MARKER",
    "SYNTH_VERSION",
    "UPPER_TYPES",
    "Person",
    "Shot",
    "SynthConfig",
    "assign_splits",
    "generate_synthetic_dataset",
    "image_rng",
    "make_captions",
    "render_image",
    "sample_identities",
    "sample_shot",
    "tokenize",
]
