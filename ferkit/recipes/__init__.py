"""Training recipes, one module per paper. Importing this package registers them all.
(add one import line here per recipe module)"""
