"""Small pure helpers every floor may use: parameter-tree paths and nested-dict leaf surgery."""
