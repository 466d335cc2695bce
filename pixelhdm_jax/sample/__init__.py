"""Sampling apart from the network: flow-matching ODE solvers and classifier-free guidance."""
