"""Generators and discriminators: an MLP GAN and two DCGANs (28x28 and 64x64).

- `mlp`: fully connected, any image shape; the baseline of Goodfellow et al. 2014.
- `dcgan28`: MNIST / Fashion-MNIST; z -> 7x7 -> 14x14 -> 28x28.
- `dcgan64`: CelebA; the stack of Radford et al. 2015, z -> 4x4 -> ... -> 64x64.

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

from distgan.models.discriminator import Discriminator, build_discriminator, discriminator_from_spec
from distgan.models.generator import Generator, build_generator, generator_from_spec
from distgan.models.layers import LABEL_LAYERS, ClassAffine, ConditionalBatchNorm, init_weights
from distgan.models.specs import ARCHS, DiscriminatorSpec, GeneratorSpec, ModelConfig

__all__ = ["ARCHS", "LABEL_LAYERS", "ClassAffine", "ConditionalBatchNorm", "Discriminator", "DiscriminatorSpec",
           "Generator", "GeneratorSpec", "ModelConfig", "build_discriminator", "build_generator",
           "discriminator_from_spec", "generator_from_spec", "init_weights"]
