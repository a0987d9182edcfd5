"""edgegan.monitor"""
