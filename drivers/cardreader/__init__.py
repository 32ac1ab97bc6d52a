"""The player-card reader driver: magnetic stripe (ISO 7811) and RFID readers in serial ASCII
mode, beside a slot machine (docs/cardreader.md). `framing` and `reader` are the sans-I/O core,
`driver` the trio shell, `cardid` the keyed hash that keeps card numbers out of everything."""
