"""What runs inside client hosts to make and measure traffic: the Outlook emulator,
name resolution as Windows does it, and scapy probes."""
