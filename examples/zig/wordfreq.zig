//! wordfreq: a wpool task written in Zig, built as a WASI command module
//! (wasm32-wasi, which is wasm32-wasip1).
//!
//! ABI (WASI command): the input JSON arrives on stdin, the output JSON goes
//! to stdout, the log goes to stderr, and the exit code says whether the
//! task succeeded (0) or failed (2 for invalid input).
//!
//! Input:  {"text": "...", "top": N}   ("top" optional, default 10)
//! Output: {"total": T, "unique": U, "top": [{"word": "...", "count": n}, ...]}
//!
//! A word is a maximal run of ASCII letters and digits, lowercased; every
//! other byte separates words. The top list is sorted by count descending,
//! then by word in byte order. See examples/inputs/wordfreq_reference.py.

const std = @import("std");

const default_top: usize = 10;
const exit_invalid_input: u8 = 2;

const Entry = struct {
    word: []const u8,
    count: usize,

    /// Count descending, then word ascending in byte order.
    fn before(_: void, a: Entry, b: Entry) bool {
        if (a.count != b.count) return a.count > b.count;
        return std.mem.lessThan(u8, a.word, b.word);
    }
};

/// Reports invalid input on stderr; main then exits with code 2.
fn invalid(comptime fmt: []const u8, args: anytype) u8 {
    std.io.getStdErr().writer().print("wordfreq: " ++ fmt ++ "\n", args) catch {};
    return exit_invalid_input;
}

fn isWordByte(c: u8) bool {
    return std.ascii.isAlphanumeric(c);
}

pub fn main() !u8 {
    // One arena for the whole run: the task is short-lived.
    var arena = std.heap.ArenaAllocator.init(std.heap.page_allocator);
    defer arena.deinit();
    const alloc = arena.allocator();

    const input = try std.io.getStdIn().readToEndAlloc(alloc, std.math.maxInt(usize));

    // Parse the whole document; std.json decodes the string escapes. The
    // diagnostics say where a syntax error is.
    var scanner = std.json.Scanner.initCompleteInput(alloc, input);
    var diagnostics = std.json.Diagnostics{};
    scanner.enableDiagnostics(&diagnostics);
    const parsed = std.json.parseFromTokenSource(std.json.Value, alloc, &scanner, .{
        .duplicate_field_behavior = .use_last,
    }) catch |err| return invalid("invalid input JSON: {s} at line {d}, column {d}", .{
        @errorName(err), diagnostics.getLine(), diagnostics.getColumn(),
    });
    const request = switch (parsed.value) {
        .object => |o| o,
        else => return invalid("invalid input JSON: expected an object", .{}),
    };
    const text: []const u8 = if (request.get("text")) |v| switch (v) {
        .string => |s| s,
        else => return invalid("input needs a string field \"text\"", .{}),
    } else return invalid("input needs a string field \"text\"", .{});
    const top: usize = if (request.get("top")) |v| switch (v) {
        .integer => |n| if (n >= 0) @intCast(n) else return invalid("\"top\" must be a non-negative integer", .{}),
        // Integers too large for i64 arrive as number strings.
        .number_string => |s| if (s.len > 0 and s[0] != '-' and std.mem.indexOfAny(u8, s, ".eE") == null)
            std.math.maxInt(usize)
        else
            return invalid("\"top\" must be a non-negative integer", .{}),
        else => return invalid("\"top\" must be a non-negative integer", .{}),
    } else default_top;

    // Split into words, lowercased (in a copy: parsed strings are const).
    const lower = try alloc.alloc(u8, text.len);
    _ = std.ascii.lowerString(lower, text);
    var counts = std.StringHashMap(usize).init(alloc);
    var total: usize = 0;
    var i: usize = 0;
    while (i < lower.len) {
        if (!isWordByte(lower[i])) {
            i += 1;
            continue;
        }
        const start = i;
        while (i < lower.len and isWordByte(lower[i])) i += 1;
        const slot = try counts.getOrPut(lower[start..i]);
        slot.value_ptr.* = if (slot.found_existing) slot.value_ptr.* + 1 else 1;
        total += 1;
    }

    const stderr = std.io.getStdErr().writer();
    // Progress, in the wpool command-module convention.
    try stderr.print("wpool:progress {d} {d}\n", .{ lower.len, lower.len });

    // Rank the distinct words.
    const entries = try alloc.alloc(Entry, counts.count());
    var it = counts.iterator();
    var k: usize = 0;
    while (it.next()) |e| : (k += 1) entries[k] = .{ .word = e.key_ptr.*, .count = e.value_ptr.* };
    std.mem.sort(Entry, entries, {}, Entry.before);

    var out = std.io.bufferedWriter(std.io.getStdOut().writer());
    const w = out.writer();
    try w.print("{{\"total\":{d},\"unique\":{d},\"top\":[", .{ total, entries.len });
    for (entries[0..@min(top, entries.len)], 0..) |e, n| {
        if (n > 0) try w.writeByte(',');
        try w.writeAll("{\"word\":");
        try std.json.stringify(e.word, .{}, w); // a JSON string, escaped
        try w.print(",\"count\":{d}}}", .{e.count});
    }
    try w.writeAll("]}\n");
    try out.flush();

    try stderr.print("wordfreq: {d} words, {d} distinct\n", .{ total, entries.len });
    return 0;
}
