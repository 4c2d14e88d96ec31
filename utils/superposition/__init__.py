"""Toy models of superposition (Elhage et al., 2022), reference implementation for chapter 04.

The toy model squeezes n sparse features through m < n hidden dimensions and back. In the
paper's column vectors:

    h = W x,    x' = ReLU(W^T h + b) = ReLU(W^T W x + b)        W: [m, n], b: [n]

Column W_i is the direction feature i gets in the hidden space. The model is trained to
reconstruct x under the importance-weighted squared error  L = E_x sum_i I_i (x_i - x'_i)^2,
on synthetic data where feature i is present with probability p_i = 1 - S_i and, when present,
uniform on [0, 1].

Layout. The code keeps the paper's W [m, n] (per instance: [d_hidden, feat]) and writes the data
as row vectors, like the rest of the course: a batch x [batch, n] goes to h = x W^T [batch, m] and
back to x' = ReLU(h W + b). In the course's [d_in, d_out] rule W is therefore the decoder weight
([d_hidden, feat]; column W[:, i] is feature i's direction) and W^T [feat, d_hidden] the encoder;
W^T W [feat, feat] reads the same in both conventions.

Shapes. Many small models ("instances") are trained at once, each with its own importance and
feature probability; the instance is the LEADING axis of every tensor:

    W                   [inst, m, n]       ("inst d_hidden feat")
    b                   [inst, n]
    x, x'               [inst, batch, n]
    importance, p       [inst, n]

so one instance is a slice ``[k]`` and the whole stack is a batch of matrices: no Python loop over
instances anywhere.

Modules:
    exercises     the graded references, plain: toy_forward, generate_batch,
                  generate_anticorrelated_batch, the loss, superposition, dimensionality
    inputs        constants, broadcasting and validating settings, sweep_probabilities, decaying_importance
    data          the other generators (two-draw, correlated groups)
    model         ToyConfig, ToyModel
    training      train: Adam with autograd (``fast=True`` opts in to ``fast``)
    fast          the hand-written gradients, an opt-in speed path proved equal to autograd by the tests
    measures      feature norms, dimensions per feature, antipodal pairs, neuron alignment, group geometry
    experiments   sparsity sweep, non-uniform sparsity, privileged basis, correlation, Johnson-Lindenstrauss
    plots         the chapter's figures
    widgets       the interactive explorer
"""
from utils.superposition.data import generate_batch_two_draws, generate_correlated_batch
from utils.superposition.exercises import (
                                           dimensionality,
                                           generate_anticorrelated_batch,
                                           generate_batch,
                                           importance_weighted_loss,
                                           per_instance_loss,
                                           superposition,
                                           toy_forward,
)
from utils.superposition.experiments import (
                                           CORRELATION_CASES,
                                           NONUNIFORM_CASES,
                                           almost_orthogonal_count,
                                           correlation_experiment,
                                           jl_experiment,
                                           nonuniform_sparsity_setup,
                                           privileged_basis_experiment,
                                           sparsity_sweep,
)
from utils.superposition.inputs import (
                                           REPRESENTED_NORM,
                                           as_instance_feature,
                                           decaying_importance,
                                           sweep_probabilities,
)
from utils.superposition.measures import (
                                           alone_and_shared,
                                           antipodal_pairs,
                                           dims_per_feature,
                                           feature_norms,
                                           group_geometry,
                                           n_represented,
                                           neuron_alignment,
)
from utils.superposition.model import ToyConfig, ToyModel
from utils.superposition.plots import (
                                           plot_dimensionality,
                                           plot_geometry,
                                           plot_jl,
                                           plot_neuron_weights,
                                           plot_sweep,
)
from utils.superposition.training import train
from utils.superposition.widgets import explore, explorer

__all__ = [
    "toy_forward", "generate_batch", "generate_anticorrelated_batch", "per_instance_loss",
    "importance_weighted_loss", "superposition", "dimensionality",
    "REPRESENTED_NORM", "as_instance_feature", "sweep_probabilities",
    "decaying_importance",
    "generate_batch_two_draws", "generate_correlated_batch",
    "ToyConfig", "ToyModel", "train",
    "feature_norms", "dims_per_feature", "n_represented", "antipodal_pairs",
    "neuron_alignment", "alone_and_shared", "group_geometry",
    "sparsity_sweep", "NONUNIFORM_CASES", "nonuniform_sparsity_setup", "privileged_basis_experiment",
    "CORRELATION_CASES", "correlation_experiment", "almost_orthogonal_count", "jl_experiment",
    "plot_sweep", "plot_geometry", "plot_dimensionality", "plot_neuron_weights", "plot_jl",
    "explore", "explorer",
]
