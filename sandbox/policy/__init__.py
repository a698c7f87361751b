"""The policy side: files to values (loading, the schema, narrowing, the model).

Nothing here touches the kernel. Kept empty so that importing one module of the package
(the launcher needs only `model`) does not import the others.
"""
