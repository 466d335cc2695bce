"""The test suite, a regular package: a namespace `tests` would lose to any installed package of that name
(torch-fidelity's wheel ships one)."""
