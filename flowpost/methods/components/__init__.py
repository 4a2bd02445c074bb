"""Pieces that methods share instead of importing each other.

* :mod:`~flowpost.methods.components.common`: per-sample squared error, ``"module:function"``
  loading, the deployed sampler's grid and rollouts.
* :mod:`~flowpost.methods.components.adversarial`: discriminator losses (BCE, relativistic
  softplus), R1 and finite-difference R1/R2 penalties, logit centering, gradient
  normalisation and paired augmentation.
* :mod:`~flowpost.methods.components.pathwise`: the FAIL-PD estimators (full pathwise through
  the solver, local one-step) and the velocity regulariser against a frozen reference.
* :mod:`~flowpost.methods.components.policy_gradient`: group advantages, the PPO clip, the
  FPO likelihood surrogate and its ratio.
* :mod:`~flowpost.methods.components.sde`: the marginal-preserving SDE of a flow, its
  roll-outs and transition log-likelihoods (Flow-GRPO's estimator).
* :mod:`~flowpost.methods.components.jumps`: time pairs, source and real samples, one jump
  and the sampling chain, transport cost and weight schedules of two-time generators
  ``G(x_a, a, b)`` (Adversarial Flows).
* :mod:`~flowpost.methods.components.guidance`: the cross-entropy of a time-conditional
  classifier (its training loss and classifier guidance) and the ``cg_*`` config keys.
* :mod:`~flowpost.methods.components.policy`: the shared policy update of a deployed sampler
  (PD or PG) against any per-sample score, used by FAIL and by reward fine-tuning.
* :mod:`~flowpost.methods.components.imitation`: the discriminator side of adversarial
  imitation (expert vs policy samples), used by FAIL and by reward + FAIL.

Every piece is a function or a small dataclass that takes the networks it needs as
arguments; none owns a network, so a method's roles stay its own sub-modules.
"""
