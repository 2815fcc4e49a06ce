"""Datasets: download (Brown/UBC PhotoTour, HPatches) and HDF5 patch caches."""
