//! Reports: markdown tables and SVG charts from saved results (being written).
