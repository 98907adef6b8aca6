"""A small, CPU-sized reproduction of the Glance claim, and the trainer of the demo model kit's weights."""
