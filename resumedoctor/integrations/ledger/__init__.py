"""Result ledgers of the jobs around training: generation, batch inference, labelling (the GEN family)."""
