"""How the controller C is trained: M's dream (``dream``), the fitness sources a CMA-ES generation is
scored by (``fitness``), CMA's warm starts (``warm_starts``), DAgger and behaviour cloning
(``imitation``), one CMA-ES run with its checks and provenance record (``cmaes_run``), and the dream
loop's state and stages (``loop``). ``train_controller_cmaes.py`` and ``dream_loop.py`` compose them.

May import every layer below it; never a script.
"""
