"""edgegan.adapt"""
