"""Generators and discriminators, one family per module, found through `family.py`'s registry.

- `mlp`: fully connected, any image shape; the baseline of Goodfellow et al. 2014.
- `dcgan`: Radford et al. 2015 at 28 (z -> 7x7 -> 14x14 -> 28x28) and 32..256 px (z -> 4x4 -> ...);
  `dcgan28` and `dcgan64` are its older names.
- `resnet`: the SNGAN / BigGAN ResNet (`resnet.py`).

Conditional models feed the label to G through conditional BatchNorm (de Vries
et al. 2017; the G of Miyato & Koyama 2018): every BatchNorm of G normalises
without its own affine and a per-class scale and shift follow. G's input is z
alone. The label is *not* concatenated to z: G's BatchNorms restore the batch
variance of every channel, and in a batch of mixed classes a label code in the
input can supply all of it, so nothing kept z's share and G learnt to drop z
(one prototype per class). D is a projection discriminator
(Miyato & Koyama 2018): logit = psi(h(x)) + <embed(y), phi(x)>, with h(x) the
last feature map (after its activation), psi the unconditional head (the usual
DCGAN linear read-out of the whole map) and phi(x) = sum over H, W of h(x), one
number per channel, as in the paper. The class term must not see positions: an
embedding over the flattened map would be a per-class spatial template, which G
can satisfy by painting one prototype per class and ignoring z.

Each network has one spec (`GeneratorSpec`, `DiscriminatorSpec`): the only
description used to build, save, load, export and evaluate it, so a safetensors
file plus its spec (JSON) is a complete model; and the forward pass has no
data-dependent control flow so it exports to ONNX with a dynamic batch.
"""

from distgan.models.discriminator import Discriminator
from distgan.models.family import (
    Family,
    InputSpec,
    LossTerms,
    WSpace,
    arch_names,
    build_discriminator,
    build_generator,
    discriminator_from_spec,
    family_of,
    generate,
    generator_from_spec,
    get_family,
    latent_size,
)
from distgan.models.generator import Generator
from distgan.models.layers import LABEL_LAYERS, ClassAffine, ConditionalBatchNorm, init_weights
from distgan.models.specs import DiscriminatorSpec, GeneratorSpec, ModelConfig, ModelSpec

__all__ = ["LABEL_LAYERS", "ClassAffine", "ConditionalBatchNorm", "Discriminator", "DiscriminatorSpec", "Family",
           "Generator", "GeneratorSpec", "InputSpec", "LossTerms", "ModelConfig", "ModelSpec", "WSpace", "arch_names",
           "build_discriminator", "build_generator", "discriminator_from_spec", "family_of", "generate",
           "generator_from_spec", "get_family", "init_weights", "latent_size"]
