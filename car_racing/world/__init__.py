"""The world and who drives in it: the CarRacing-v3 factory and the 64×64 frame (``envs``), the fast
renderer with identical frames (``fast_render``), the scripted expert (``autopilot``), the random and human
drivers with the :class:`~car_racing.world.drivers.Driver` protocol (``drivers``), keyboard and gamepad input
(``human_input``) and the full-resolution window (``viewer``).

May import :mod:`car_racing.models` and :mod:`car_racing.common`; knows nothing of recordings or runs.
"""
