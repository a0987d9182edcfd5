"""edgegan.baselines"""
