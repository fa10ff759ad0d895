//! volplugin
