"""Where bytes live: directories as local paths or object-store URLs (``location``),
the process-wide tensorstore context and request limits (``context``), tensorstore arrays
(``arrays``), fsync and durable writes (``durable``), and dropping
cached pages (``page_cache``).

May import: ``errors`` only (the bottom layer).
"""
