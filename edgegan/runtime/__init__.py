"""edgegan.runtime"""
