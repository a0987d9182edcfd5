"""edgegan.flower"""
