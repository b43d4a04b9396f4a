/** The shell commands of the README's "Set up" section, in order. */
export declare function setupCommands(readme: string): string[];
