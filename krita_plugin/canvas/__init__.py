"""Everything that touches Krita's API (`krita`, libkis): the only code importing it.

- `app`: the Krita application: registration base classes, settings, actions, paths.
- `document`: the active document: colour check, work region, reading pixels.
- `layers`: inserting result layers next to the anchor layer, one undo step each.

It hands out and takes plain bytes (BGRA, Krita's own order for 8-bit RGBA) and
`geometry.Bounds`; the rest of the plugin never sees a libkis object.
"""
