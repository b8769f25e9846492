"""Recorded driving on disk: the one module for the format (``recorded_data``: frames, actions,
rewards, dones, the memory model's windows, appending and resuming), V's latent cache beside it
(``latent_cache``) and what a recording holds in a few lines (``summary``: the recorder's data summary).

May import :mod:`car_racing.models`, :mod:`car_racing.common` and :mod:`car_racing.world`.
"""
