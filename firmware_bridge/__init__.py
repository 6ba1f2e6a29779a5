"""Link to the instrument's firmware: wire protocol, codec, transports, C reference encoder.

Filled by the firmware-bridge issue. This package imports nothing of edgehema, so firmware
engineers can use it alone.
"""
