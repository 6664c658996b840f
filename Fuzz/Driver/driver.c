// The declaration in include/FuzzDriver.h is what the fuzz targets need; libFuzzer defines the function.
