"""How V, M and C are trained: stages 2 and 3 as library functions (``vision``: ``train_vision(config)``,
``memory``: ``train_memory(config)``) and M's dream film beside a recorded episode (``memory_film``); for C,
M's dream (``dream``), the fitness sources a CMA-ES generation is scored by (``fitness``), CMA's warm starts
(``warm_starts``), DAgger and behaviour cloning (``imitation``), one CMA-ES run with its checks and provenance
record (``cmaes_run``), and the dream loop's state and stages (``loop``). ``train_controller_cmaes.py`` and
``dream_loop.py`` compose them.

May import every layer below it; never a script.
"""
