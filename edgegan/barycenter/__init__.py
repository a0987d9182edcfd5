"""edgegan.barycenter"""
