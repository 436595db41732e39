"""Markov chain Monte Carlo: kernels as ``(init, step)`` pairs on one shared state.

Sub-modules: :mod:`.base` (the kernel pair, :class:`~.base.ChainState`, :class:`~.base.StepInfo`),
:mod:`.monomials` (terms of the HMC Hamiltonian), :mod:`.integrators` (schemes as coefficient
data with Chroma's names, one nested builder), :mod:`.hmc` (the HMC kernel; Duane et al. 1987),
:mod:`.flow_mh` (independence Metropolis with flow proposals, arXiv:2003.06413), :mod:`.heatbath`
(Cabibbo-Marinari heatbath and overrelaxation for SU(2)/SU(3)), :mod:`.nonequilibrium`
(protocols from p0 to p with Jarzynski weights, NE-MCMC), :mod:`.compose` (cycles, mixtures, a
driver) and :mod:`.reweighting` (ESS, reweighted means, independent flow samples).  See
docs/sampler.md, docs/hmc.md and docs/nonequilibrium.md.
"""
