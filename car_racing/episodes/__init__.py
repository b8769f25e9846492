"""Running real-env episodes: the one rollout loop for every job (``rollout``), where the episodes run
— worker processes or Ray actors, identical results (``backends``) — the World Models agent that
drives from V, M and C (``agent``), the record of an agent's measured score (``evaluation``), and stage 1 as a
library function, recording episodes into the data folder (``recording``: ``record(config)``).

May import every layer below it: :mod:`car_racing.models`, :mod:`car_racing.common`,
:mod:`car_racing.world`, :mod:`car_racing.recording`.
"""
