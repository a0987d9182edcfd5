"""edgegan.sim"""
