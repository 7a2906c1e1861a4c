"""Small, fast readers of capture files (pcap and pcapng), decoded with `struct`."""

from bundle.pcap.reader import CaptureReader, Packet, Problem, open_capture

__all__ = ["CaptureReader", "Packet", "Problem", "open_capture"]
