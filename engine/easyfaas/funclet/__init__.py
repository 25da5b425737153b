"""Sandboxes: plan, zygote + nsinit (stdlib only), cgroup backends, pool, service.

Kept free of imports: the zygote imports ``easyfaas.funclet.nsinit`` under a bare
``python3 -I -S``, which must not pull in the engine's dependencies.
"""
