"""World Models (Ha & Schmidhuber 2018) for gymnasium's CarRacing-v3: one script per stage."""
