"""Finding documents and nodes again by id (libkis objects are fresh wrappers each call)."""

from __future__ import annotations

from krita import Document, Krita, Node

__all__ = ["document_id", "find_document", "find_node", "node_id", "sibling_below"]


def node_id(node: Node) -> str:
    return node.uniqueId().toString()


def document_id(document: Document) -> str:
    """A document's id: its root node's unique id (stable while it is open)."""
    return node_id(document.rootNode())


def find_document(identifier: str) -> Document | None:
    """The open document with this id, or None once it was closed."""
    for document in Krita.instance().documents():
        if document_id(document) == identifier:
            return document
    return None


def find_node(root: Node, identifier: str) -> Node | None:
    """The node with this unique id under `root` (depth first), or None."""
    for child in root.childNodes():
        if node_id(child) == identifier:
            return child
        found = find_node(child, identifier)
        if found is not None:
            return found
    return None


def sibling_below(parent: Node, node: Node) -> Node | None:
    """The sibling directly below `node` in `parent`, or None when it is the bottom one."""
    siblings = parent.childNodes()  # bottom first
    index = [node_id(sibling) for sibling in siblings].index(node_id(node))
    return siblings[index - 1] if index > 0 else None
